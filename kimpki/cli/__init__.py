"""kimpki.cli"""
