"""kimpki.ops"""
