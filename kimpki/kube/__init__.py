"""kimpki.kube"""
