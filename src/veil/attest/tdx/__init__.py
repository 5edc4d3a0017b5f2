"""attest/tdx"""
