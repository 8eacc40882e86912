"""Message sizes the streaming job chooses, in a module without Beam, so the flag parser can show them."""
from __future__ import annotations

#: ``--max-message-bytes``' default: a listing record is a few kilobytes
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
