"""kimpki.verify"""
