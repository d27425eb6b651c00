// Package miniotest runs a real MinIO server on loopback for tests: the
// binary scripts/ensure-minio.sh builds, a free port, a temporary data
// directory, and buckets made on request.
package miniotest
