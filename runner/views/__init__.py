"""What a person sees: plans, summaries and status (render), the live terminal view and
its estimate (progress, eta), and the HTML report."""
