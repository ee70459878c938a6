"""Prompt templates (TOML) and GBNF grammars, shipped as package data; a user may override them from a file."""
