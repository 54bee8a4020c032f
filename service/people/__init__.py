"""The migrant register (流动人口个案): entry, search, import, duplicates."""
