"""Staff notices (待办提醒): reminders, overdue items and escalations made by the SLA sweeps."""
