"""Robustness audit: does an encoder or a model see biology or the hospital?"""
