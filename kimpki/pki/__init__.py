"""kimpki.pki"""
