"""What a person sees: plans, status and the apply summary (plan, status, summary), the
live terminal view and its estimate (progress, eta), and the HTML report."""
