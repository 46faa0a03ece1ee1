"""Talking to the finetune API: its wire format, the client, which endpoint, the rate limit,
the poll schedule and HTTP traces."""
