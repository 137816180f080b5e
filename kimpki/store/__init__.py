"""kimpki.store"""
