"""Redis Streams edges: key names, reply shapes across Redis versions, consumers and publishers."""
