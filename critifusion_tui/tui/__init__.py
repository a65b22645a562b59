"""The Textual app. Nothing here imports torch at module level."""
