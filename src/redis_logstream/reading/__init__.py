"""Reading Redis streams back: entries, the stream reader (history + follow),
the pub/sub listener (live) and the text renderer."""
