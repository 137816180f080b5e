"""kimpki.localgw"""
