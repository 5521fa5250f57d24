"""The native family: posterm's own framed TLV protocol (firmware_protocol/native, PROTOCOL.md).

link.py is the sans-IO link, ecr.py the ECR driver, redact.py what a trace or recording masks.
"""
