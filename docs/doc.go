// Package docs holds voldelta's documentation (the Markdown files of this
// directory). It has no code. Its tests check that README.md and every
// docs/*.md link only to files of the repository that exist, and to
// headings that exist in them; and that operations.md names every
// transport error code as the agent prints it and lists exactly the
// metrics the Kubernetes agent and receiver register.
package docs
