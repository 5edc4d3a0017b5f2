"""attest/nvidia"""
