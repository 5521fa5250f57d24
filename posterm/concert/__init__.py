"""The Ingenico Concert (Telium) protocol family: a sans-IO link, the ECR driver, the emulator's front.

The frames and messages are in :mod:`firmware_protocol.concert`; see PROTOCOL.md's Concert section.
"""
