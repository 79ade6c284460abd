"""Rule packs shipped with the platform (YAML package data; see rules.pack)."""
