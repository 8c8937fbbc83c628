"""anyseq: every modality as discrete tokens, one decoder-only transformer."""
