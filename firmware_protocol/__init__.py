"""The posterm wire contract: frames, the ECR <-> terminal messages, the host messages.

Depends on ``construct`` only. Read PROTOCOL.md beside this file for the bytes.

    >>> from firmware_protocol import PayRequest, encode_message, decode_message
    >>> msg = PayRequest(amount_minor=1234, currency="CNY", order_id="A-1")
    >>> decode_message(encode_message(msg)) == msg
    True
"""

from firmware_protocol.host import messages as host  # noqa: F401  registers the host messages
from firmware_protocol.errors import (
    FieldError,
    FrameError,
    MessageError,
    ProtocolError,
    UnknownMandatoryField,
    UnknownMessageType,
)
from firmware_protocol.native.frame import (
    LINK_VERSION,
    MAX_FRAME,
    MAX_PAYLOAD,
    BadFrame,
    Framer,
    FrameKind,
    Garbage,
    LinkFrame,
    decode_frame,
    encode_frame,
)
from firmware_protocol.native.messages import *  # noqa: F401,F403
from firmware_protocol.native.messages import ECR_MESSAGES, PROTOCOL_VERSION
from firmware_protocol.native.tlv import Message, message_types
from firmware_protocol.native.tlv import decode as decode_message
from firmware_protocol.native.tlv import encode as encode_message

__all__ = [
    "BadFrame", "ECR_MESSAGES", "FieldError", "FrameError", "FrameKind", "Framer", "Garbage",
    "LINK_VERSION", "LinkFrame", "MAX_FRAME", "MAX_PAYLOAD", "Message", "MessageError",
    "PROTOCOL_VERSION", "ProtocolError", "UnknownMandatoryField", "UnknownMessageType",
    "decode_frame", "decode_message", "encode_frame", "encode_message", "message_types",
]
