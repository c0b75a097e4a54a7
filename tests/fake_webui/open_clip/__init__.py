"""Fake of the open_clip package (the commit the WebUI 1.10.1 installs: bb6e834e). Only the
tokenizer module is faked: modules/sd_hijack_open_clip.py takes SD2 prompt token ids from
`open_clip.tokenizer._tokenizer`. See tokenizer.py."""
