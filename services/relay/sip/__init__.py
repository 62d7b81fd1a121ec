"""The SIP edge of the relay: transports, transactions, registrar, router, outbound delivery."""
