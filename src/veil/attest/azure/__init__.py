"""attest/azure"""
