"""Support for the papermill notebooks: parameter checks, the per-notebook session, the batch runner."""
