"""ohttp"""
