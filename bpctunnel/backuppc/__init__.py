"""backuppc"""
