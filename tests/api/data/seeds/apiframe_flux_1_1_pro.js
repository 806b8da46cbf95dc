const response = await fetch("https://api.apiframe.ai/v2/images/generate", {
  method: "POST",
  headers: {
    "X-API-Key": "afk_your_api_key_here",
    "Content-Type": "application/json",
  },
  body: JSON.stringify({
    "prompt": "a sleek silver sports car on a coastal highway at sunset, hyper-realistic",
    "model": "flux-1.1-pro",
    "fluxParams": {
      "image_prompt": "https://example.com/input.jpg",
      "image_prompt_strength": 0.5,
      "output_format": "jpg",
      "output_quality": 90
    }
  }),
});
const { jobId } = await response.json();
console.log(jobId);
