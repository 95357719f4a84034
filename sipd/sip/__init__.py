"""The sans-IO SIP core: messages, framing, transactions. No sockets, no clocks."""
