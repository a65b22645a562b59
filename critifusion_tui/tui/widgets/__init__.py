"""Widgets of the app: each shows one kind of thing and posts messages; none runs engine work."""
