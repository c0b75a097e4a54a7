"""The Trainer tab (gradio 3.41 and 4.x), its background job runner, REST API and standalone server."""
