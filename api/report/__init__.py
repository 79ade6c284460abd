"""The monthly report: a PDF with plots and a CSV of the same figures, per
enterprise and per park (``smartpark report monthly``, ``GET /v1/reports/monthly``).
"""
