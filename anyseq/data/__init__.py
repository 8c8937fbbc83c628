"""Token shards: writer, reader, packing, the Lightning data module, and the exact-resume
sampling (``resumable``) that the tokenizers' data modules share."""
