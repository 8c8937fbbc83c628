"""Token shards: writer, reader, packing and the Lightning data module."""
