"""Decoder-only transformer families, their parameters and weight import/export."""
