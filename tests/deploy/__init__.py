"""Static checks of the deployment and observability files under deploy/, the Dockerfile and compose."""
