"""kimpki.policy"""
