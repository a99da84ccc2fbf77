"""Text sources, partition of documents between users, and data statistics."""
