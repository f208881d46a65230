"""The supervisor <-> SIP worker protocol: framing and connection, typed messages."""
