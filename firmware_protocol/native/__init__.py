"""posterm's own protocol on the wire: frames (frame.py), TLV encoding (tlv.py), the ECR <-> terminal messages (messages.py).

See PROTOCOL.md beside the package for the bytes. Imports construct only.
"""
