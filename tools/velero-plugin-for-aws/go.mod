module github.com/voldelta/voldelta/tools/velero-plugin-for-aws

go 1.26.0

require github.com/vmware-tanzu/velero-plugin-for-aws v1.14.3
