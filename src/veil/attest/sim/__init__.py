"""attest/sim"""
