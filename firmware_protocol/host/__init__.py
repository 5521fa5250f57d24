"""The terminal <-> host messages (messages.py): TLV-encoded like the native family, MAC'd, over TCP.

See PROTOCOL.md, "Host protocol". Imports construct only.
"""
