"""Call flows: the outbound notification flow and its pieces (choice matching)."""
