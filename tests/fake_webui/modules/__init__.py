"""Fake of the AUTOMATIC1111 WebUI 1.10.1 `modules` package: only the API the Trainer extension uses.

See tests/fake_webui/README.md for what each module mirrors.
"""
