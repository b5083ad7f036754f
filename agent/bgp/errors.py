"""BGP errors as typed exceptions carrying the NOTIFICATION code and subcode (RFC 4271 section 6)."""

from __future__ import annotations

# NOTIFICATION error codes (RFC 4271 4.5)
MESSAGE_HEADER_ERROR = 1
OPEN_MESSAGE_ERROR = 2
UPDATE_MESSAGE_ERROR = 3
HOLD_TIMER_EXPIRED = 4
FSM_ERROR = 5
CEASE = 6
ROUTE_REFRESH_MESSAGE_ERROR = 7  # RFC 7313

# Message header error subcodes
CONNECTION_NOT_SYNCHRONIZED = 1
BAD_MESSAGE_LENGTH = 2
BAD_MESSAGE_TYPE = 3

# OPEN message error subcodes
UNSUPPORTED_VERSION_NUMBER = 1
BAD_PEER_AS = 2
BAD_BGP_IDENTIFIER = 3
UNSUPPORTED_OPTIONAL_PARAMETER = 4
UNACCEPTABLE_HOLD_TIME = 6
UNSUPPORTED_CAPABILITY = 7

# UPDATE message error subcodes
MALFORMED_ATTRIBUTE_LIST = 1
UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
MISSING_WELL_KNOWN_ATTRIBUTE = 3
ATTRIBUTE_FLAGS_ERROR = 4
ATTRIBUTE_LENGTH_ERROR = 5
INVALID_ORIGIN_ATTRIBUTE = 6
INVALID_NEXT_HOP_ATTRIBUTE = 8
OPTIONAL_ATTRIBUTE_ERROR = 9
INVALID_NETWORK_FIELD = 10
MALFORMED_AS_PATH = 11

# Cease subcodes (RFC 4486)
ADMINISTRATIVE_SHUTDOWN = 2
PEER_DECONFIGURED = 3
ADMINISTRATIVE_RESET = 4
CONNECTION_REJECTED = 5
OTHER_CONFIGURATION_CHANGE = 6
CONNECTION_COLLISION_RESOLUTION = 7

CODE_NAMES = {
    MESSAGE_HEADER_ERROR: "Message header error",
    OPEN_MESSAGE_ERROR: "OPEN message error",
    UPDATE_MESSAGE_ERROR: "UPDATE message error",
    HOLD_TIMER_EXPIRED: "Hold timer expired",
    FSM_ERROR: "Finite state machine error",
    CEASE: "Cease",
    ROUTE_REFRESH_MESSAGE_ERROR: "ROUTE-REFRESH message error",
}


class BGPError(Exception):
    """An error that must be reported to the peer with a NOTIFICATION (code, subcode, data)."""

    code = 0

    def __init__(self, subcode: int, message: str, data: bytes = b""):
        self.subcode = subcode
        self.data = data
        super().__init__(f"{CODE_NAMES.get(self.code, self.code)} (subcode {subcode}): {message}")


class MessageHeaderError(BGPError):
    """Bad marker, length or type (code 1)."""

    code = MESSAGE_HEADER_ERROR


class OpenMessageError(BGPError):
    """Bad OPEN (code 2)."""

    code = OPEN_MESSAGE_ERROR


class UpdateMessageError(BGPError):
    """UPDATE that must reset the session (code 3)."""

    code = UPDATE_MESSAGE_ERROR


class HoldTimerExpired(BGPError):
    """No message from the peer within the hold time (code 4)."""

    code = HOLD_TIMER_EXPIRED


class FSMError(BGPError):
    """A message that is not allowed in the current state (code 5)."""

    code = FSM_ERROR


class Cease(BGPError):
    """Administrative close (code 6)."""

    code = CEASE


class RouteRefreshError(BGPError):
    """Bad ROUTE-REFRESH (code 7, RFC 7313)."""

    code = ROUTE_REFRESH_MESSAGE_ERROR
