// Package docs holds voldelta's documentation (the Markdown files of this
// directory). It has no code: its test checks that README.md and every
// docs/*.md link only to files of the repository that exist, and to
// headings that exist in them.
package docs
