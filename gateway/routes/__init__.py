"""Thin route handlers: validate, call a service, return a Struct."""
