"""Shampoo and SOAP: placeholder, filled in by its issue."""
